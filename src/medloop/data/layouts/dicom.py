"""DICOM files as an unlabeled pool (no masks, no labels)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medloop.data.io import is_dicom_file, read_dicom, read_dicom_header
from medloop.data.layouts.base import LAYOUTS, Layout
from medloop.data.layouts.folder import list_files, visible_files
from medloop.data.record import DatasetInfo, Entry, RawItem
from medloop.errors import DataError

__all__ = ["DicomLayout"]


@LAYOUTS.register("dicom")
class DicomLayout(Layout):
    name = "dicom"
    priority = 70
    summary = "DICOM files (any folder tree, .dcm or DICM preamble) read as unlabeled images; multi-frame -> slices"
    tree = """\
pool/
  study1/IM0001.dcm  IM0002.dcm ...   (case id = PatientID when present)
  study2/1.2.840....                  (files without suffix are recognised by their content: the DICM
                                       marker, or a dataset saved without the preamble)"""

    def __init__(self, root, seed: int = 0, **options):
        super().__init__(root, seed, **options)
        self.notes: dict[str, int] = {}
        self.ignored: list[Path] = []

    @classmethod
    def detect(cls, root: Path) -> bool:
        for i, path in enumerate(visible_files(root)):
            if is_dicom_file(path):
                return True
            if i > 500:
                return False
        return False

    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, str(self.root), (), {}, False)

    def scan(self) -> Iterator[Entry | DataError]:
        files, problems = list_files(self.root)
        yield from problems
        for path in files:
            if path.name.upper() == "DICOMDIR" or not is_dicom_file(path):
                self.ignored.append(path)
                continue
            rel = path.relative_to(self.root)
            entry_id = rel.with_suffix("").as_posix() if rel.suffix.lower() in (".dcm", ".dicom") else rel.as_posix()
            try:
                header = read_dicom_header(path)
            except DataError as err:
                yield err
                continue
            meta = {k: str(header.get(k)) for k in ("Modality", "StudyInstanceUID", "SeriesInstanceUID") if k in header}
            case_id = str(header.get("PatientID") or entry_id)
            yield Entry(entry_id, case_id, path, (), None, meta=meta)
        if self.ignored:
            self.notes["non-DICOM files ignored"] = len(self.ignored)

    def load(self, entry: Entry, size: int | None) -> RawItem:
        frames = read_dicom(entry.image)  # [F, H, W, C]
        return RawItem(frames if frames.shape[0] > 1 else frames[0])
