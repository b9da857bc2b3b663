"""Defaults of the GPU pool that opsctl reads too (plain data, no Pulumi import).

settings.py uses them when the stack's config leaves a key out, and opsctl's capacity check
(opsctl/infra/target.py) loads this file from the program folder, so both compare against
the same numbers: a stack without `transcribe:gpuMaxSize` gets a NodePool of GPU_MAX_SIZE GPUs.
"""

GPU_MAX_SIZE = 2  # transcribe:gpuMaxSize when unset: GPUs Karpenter may run at once
GPU_INSTANCE_TYPES = ("g5.xlarge", "g6.xlarge")  # transcribe:gpuInstanceTypes when unset

# NVIDIA GPUs per instance, from AWS's instance type docs ("Accelerated computing" specifications,
# https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html). gpu.py refuses a type not listed
# here: opsctl could not tell whether a worker pod fits on it.
GPUS_PER_INSTANCE_TYPE = {
    "g4dn.xlarge": 1, "g4dn.2xlarge": 1, "g4dn.4xlarge": 1, "g4dn.8xlarge": 1, "g4dn.16xlarge": 1,
    "g4dn.12xlarge": 4, "g4dn.metal": 8,
    "g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.8xlarge": 1, "g5.16xlarge": 1,
    "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
    "g6.xlarge": 1, "g6.2xlarge": 1, "g6.4xlarge": 1, "g6.8xlarge": 1, "g6.16xlarge": 1,
    "g6.12xlarge": 4, "g6.24xlarge": 4, "g6.48xlarge": 8,
    "g6e.xlarge": 1, "g6e.2xlarge": 1, "g6e.4xlarge": 1, "g6e.8xlarge": 1, "g6e.16xlarge": 1,
    "g6e.12xlarge": 4, "g6e.24xlarge": 4, "g6e.48xlarge": 8,
    "p3.2xlarge": 1, "p3.8xlarge": 4, "p3.16xlarge": 8, "p3dn.24xlarge": 8,
    "p4d.24xlarge": 8, "p4de.24xlarge": 8, "p5.48xlarge": 8,
}
