"""The quick-start service with its state in S3 instead of servectl.state.json.

The bucket must exist and keep versions:
    aws s3api create-bucket --bucket acme-serving-state --region eu-west-1 \
        --create-bucket-configuration LocationConstraint=eu-west-1
    aws s3api put-bucket-versioning --bucket acme-serving-state --versioning-configuration Status=Enabled
Bucket and region come from variables so CI can point the same config at a test bucket.
"""
from servectl import Backend, Endpoint, LocalRay, S3State, var

LocalRay()
S3State(
    bucket=var("state_bucket", default="acme-serving-state"),
    key="prod/serving.json",
    region=var("state_region", default="eu-west-1"),
    encrypt=True,
)

hello = Backend("hello", "models:Hello", "Hello", num_replicas=1, ray_actor_options={"num_cpus": 0.5})
Endpoint("hello", route="/hello", backend=hello)
