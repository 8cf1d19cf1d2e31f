"""A human in the loop: the annotation server (``medloop serve``) for both methods.

``datastore`` (the run folder's images, expert labels, model proposals and index, as MONAI Label lays them
out), ``human`` (``HumanOracle``: the loop's queries as a persisted, leased queue), ``runner`` (one track of
the loop in a background thread), ``app`` (the REST API, a MONAI Label-compatible subset, and the browser UI in
``static/``).
"""

from medloop.serve.app import create_app, serve
from medloop.serve.datastore import Datastore, RequestError
from medloop.serve.human import Batch, HumanOracle
from medloop.serve.runner import Plan, Runner, plan_track

__all__ = ["Batch", "Datastore", "HumanOracle", "Plan", "RequestError", "Runner", "create_app", "plan_track", "serve"]
