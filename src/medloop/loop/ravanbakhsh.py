"""The old home of collaborative segmentation, kept so code written against it keeps importing: the method is now
the plug-in ``medloop.methods.ravanbakhsh`` (nothing in medloop imports this module)."""

from medloop.methods.ravanbakhsh.method import CollabData, Ravanbakhsh, load_collab_data, query_counts
from medloop.methods.ravanbakhsh.protocol import algorithm1, quality_control_summary, run_collaborative

__all__ = ["CollabData", "Ravanbakhsh", "algorithm1", "load_collab_data", "quality_control_summary", "query_counts",
           "run_collaborative"]
