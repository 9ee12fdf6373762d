"""The seed's "Dependency management" (TF1 and TF2 side by side), made small.

Two backends run the same code with different pinned versions of one
pure-Python package, each in its own Ray runtime environment; each reports the
version it imported. `conda="env-name"` uses an existing conda env instead;
where conda is missing, `plan` says so for that backend before anything is
deployed.
"""
from servectl import Backend, Endpoint, LocalRay

LocalRay()

old = Backend("tabulate_old", "models:VersionReport", pip=["tabulate==0.8.10"], ray_actor_options={"num_cpus": 0.25})
new = Backend("tabulate_new", "models:VersionReport", pip=["tabulate==0.9.0"], ray_actor_options={"num_cpus": 0.25})
Endpoint("old", route="/old", backend=old)
Endpoint("new", route="/new", backend=new)
