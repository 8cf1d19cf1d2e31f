"""A human in the loop: the annotation server (``medloop serve``) for both methods.

``datastore`` (the run folder's images, expert labels, model proposals and index, as MONAI Label lays them
out), ``human`` (``HumanOracle``: the loop's queries as a persisted, leased queue), ``runner`` (one track of
the loop in a background thread), ``served_run`` (what the API means for the run), ``labelfile`` (label maps in
and out: PNG, NIfTI, NRRD), ``routers`` (MONAI Label's API, one router per resource, and the browser UI's, with
the UI itself in ``static/``) and ``app`` (the web app over them).
"""

from medloop.serve.app import create_app, serve
from medloop.serve.datastore import Datastore, RequestError
from medloop.serve.human import Batch, HumanOracle
from medloop.serve.runner import Plan, Runner, plan_track
from medloop.serve.served_run import ServedRun

__all__ = ["Batch", "Datastore", "HumanOracle", "Plan", "RequestError", "Runner", "ServedRun", "create_app",
           "plan_track", "serve"]
