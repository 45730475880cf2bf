"""The web console (`recsys console`): a browser's view of the same stores the CLI uses.

Pages: Try it (recommendations from the running predictor, feedback through the events API),
Experiments (the online champion-challenger analysis, promote and rollback), Monitoring (events,
requests, latency, drift, pipeline runs) and Models (the MLflow registry).

Server-rendered HTML (FastAPI + Jinja2, both already installed with KServe and MLflow) with one
small script that only enhances forms; the charts are SVG drawn on the server. Nothing is fetched
from the network: the style sheet and the script ship in `static/` as package data.
"""
