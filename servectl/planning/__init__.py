"""Planning (pure, no I/O): the desired state and the recorded state → an ordered ``Plan``.

``planner`` diffs and classifies each change by what it costs (from the
fields' ``update_type``), orders it for zero downtime and honours
``--target``; ``placement`` and ``fleet`` pack replicas onto nodes (the same
code ``status`` and the AWS node scaler use); ``rollout_position`` carries a
rollout's recorded position into the desired state; ``planfile`` saves and
reads plans (``plan -out``) as Terraform's plan files.
"""
