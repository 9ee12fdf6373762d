"""The seed's "Configuring Parallelism with OMP_NUM_THREADS", per backend.

Ray sets OMP_NUM_THREADS to a replica's whole CPUs (at least 1) to avoid
contention; a backend that wants more threads says so, and servectl sets
OMP/MKL/OpenBLAS variables in the replica process before user code imports
numpy or torch. Changing it restarts the replicas (a replace): threads are
fixed when the library loads.
"""
from servectl import Backend, Endpoint, LocalRay, var

LocalRay()

threads = var("threads", default=2)

parallel = Backend("parallel_backend", "models:Parallel", omp_num_threads=threads, ray_actor_options={"num_cpus": 0.5})
Endpoint("parallel", route="/parallel", backend=parallel)

default = Backend("default_backend", "models:Parallel", ray_actor_options={"num_cpus": 0.5})
Endpoint("default", route="/default", backend=default)
