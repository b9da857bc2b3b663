"""`opsctl infra`: the Pulumi program in the ops root's `stacks/`, driven per environment.

Through Pulumi's Automation API with the local program (the same `stacks/` folder a person
could run `pulumi up` in), so there is one program and one state, whoever runs it. Every
import of pulumi happens inside the functions: `opsctl --help` stays fast.

    target.py      which stack and program an environment uses; the pulumi CLI; consistency
    events.py      engine events -> what changed, and the live view on stderr
    operations.py  preview, up, destroy, refresh, outputs, policy, and their approvals;
                   up and destroy own their sequence (target, preview, approve, run)
"""

from opsctl.infra.operations import (  # noqa: F401  (the public API of this capability)
    OUTPUTS,
    InfraResult,
    OutputsResult,
    PolicyResult,
    StackOutputs,
    approve,
    check_policy,
    destroy,
    outputs,
    read_outputs,
    run,
    terminal_approval,
    up,
)
