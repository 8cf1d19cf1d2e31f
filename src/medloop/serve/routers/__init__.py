"""One router per resource, as MONAI Label's ``endpoints/``: ``auth``, ``info``, ``activelearning``,
``datastore``, ``infer`` and ``ui`` (the browser UI and its own endpoints). Each works on the ``ServedRun``
that ``served`` hands it; ``auth.require_token`` guards all but ``/health/`` and MONAI Label's auth probes."""
