"""Run the program, or any one component, against Pulumi's mocks: no cloud, no CLI.

This is the unit-testing harness Pulumi documents (`pulumi.runtime.set_mocks`): every
resource the program registers reaches `new_resource` with the exact inputs it passed, which
are captured for the tests and for the policy checks. The mock answers with those inputs plus
the few computed attributes the program reads back (ids, ARNs, endpoints, the OIDC issuer),
shaped like AWS's so that code depending on them runs as it would in a preview.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pulumi
import yaml

ACCOUNT = "123456789012"
PLACEHOLDER_SECRET = "offline-placeholder-secret"


@dataclass
class Captured:
    """One resource as the program declared it: type token, logical name, inputs (wire names)."""

    type: str
    name: str
    inputs: dict[str, Any]
    custom: bool = True
    provider: str = ""  # the provider reference, e.g. the cluster's kubernetes provider


@dataclass
class OfflineRun:
    """What a program declared under the mocks: every resource (in order) and the outputs."""

    resources: list[Captured] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_token: str) -> list[Captured]:
        """The resources of one type token, e.g. aws:rds/instance:Instance."""

        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str, name: str | None = None) -> Captured:
        """The one resource of that type (and logical name); LookupError unless exactly one."""

        found = [r for r in self.of_type(type_token) if name is None or r.name == name]
        if len(found) != 1:
            raise LookupError(f"expected one {type_token} named {name or '*'}, found {[r.name for r in found]}")
        return found[0]


def unsecret(value: Any) -> tuple[bool, Any]:
    """(was it marked secret, the plain value) for an input as the engine receives it."""
    from pulumi.runtime import rpc

    if isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig:
        return True, value.get("value")
    return False, value


def random_password(inputs: dict[str, Any]) -> str:
    """What pulumi_random's RandomPassword would give for these inputs: length and character classes."""
    special = inputs.get("overrideSpecial", "!@#$%&*()-_=+[]{}<>:?")
    classes = [(flag, chars) for flag, chars in (("upper", string.ascii_uppercase), ("lower", string.ascii_lowercase),
                                                 ("numeric", string.digits), ("special", special))
               if inputs.get(flag, True)]
    alphabet = "".join(chars for _, chars in classes)
    return "".join(secrets.choice(alphabet) for _ in range(int(inputs.get("length", 16))))


class CapturingMocks(pulumi.runtime.Mocks):
    """Pulumi mocks that record every resource and answer with the state AWS would compute
    (ARNs, endpoints, ids) for the types the program reads back."""

    def __init__(self, region: str = "eu-west-1"):
        self.region = region
        self.issuer = f"https://oidc.eks.{region}.amazonaws.com/id/C0FFEE"
        self.captured: list[Captured] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        """Record the resource; answer [id, inputs plus computed state]."""

        inputs = dict(args.inputs)
        self.captured.append(Captured(args.typ, args.name, inputs, args.custom, args.provider or ""))
        rid, state = self._computed(args.typ, args.name, inputs)
        return [rid, {**inputs, **state}]

    def _computed(self, typ: str, name: str, inputs: dict) -> tuple[str, dict]:
        service = typ.split(":")[1].split("/")[0] if typ.startswith("aws:") else "x"
        state: dict[str, Any] = {"arn": f"arn:aws:{service}:{self.region}:{ACCOUNT}:{name}"}
        rid = f"{name}-id"
        if typ == "aws:s3/bucket:Bucket":
            rid = inputs["bucket"]
            state = {"arn": f"arn:aws:s3:::{rid}", "bucket": rid}
        elif typ == "aws:rds/instance:Instance":
            address = f"{inputs['identifier']}.c0ffee.{self.region}.rds.amazonaws.com"
            state.update(address=address, port=5432, endpoint=f"{address}:5432", masterUserSecrets=[{
                "secretArn": f"arn:aws:secretsmanager:{self.region}:{ACCOUNT}:secret:rds!db-{name}",
                "secretStatus": "active", "kmsKeyId": inputs.get("masterUserSecretKmsKeyId", "")}])
        elif typ == "aws:rds/subnetGroup:SubnetGroup" or typ == "aws:rds/parameterGroup:ParameterGroup":
            state["name"] = inputs.get("name", name)
        elif typ == "aws:elasticache/replicationGroup:ReplicationGroup":
            host = f"master.{inputs['replicationGroupId']}.c0ffee.euw1.cache.amazonaws.com"
            state.update(primaryEndpointAddress=host,
                         port=inputs.get("port", 6379))
        elif typ == "aws:eks/cluster:Cluster":
            state.update(endpoint=f"https://{name}.gr7.{self.region}.eks.amazonaws.com",
                         certificateAuthority={"data": "Q0EtREFUQQ=="},
                         identities=[{"oidcs": [{"issuer": self.issuer}]}],
                         vpcConfig={**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": "sg-eks-cluster"})
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
        elif typ == "aws:kms/key:Key":
            state["keyId"] = f"{name}-key-id"
        elif typ == "aws:iam/role:Role":
            state.update(arn=f"arn:aws:iam::{ACCOUNT}:role/{name}", name=name)
        elif typ == "aws:sqs/queue:Queue":
            queue = inputs.get("name", f"{name}-0c0ffee")  # autonamed, as Pulumi does
            state.update(name=queue, url=f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT}/{queue}")
            rid = state["url"]
        elif typ == "aws:cloudwatch/eventRule:EventRule":
            state["name"] = inputs.get("name", f"{name}-0c0ffee")
        elif typ == "random:index/randomId:RandomId":
            raw = secrets.token_bytes(int(inputs.get("byteLength", 8)))  # fresh per run, as the provider's
            rid = base64.urlsafe_b64encode(raw).decode().rstrip("=")
            state = {"hex": raw.hex(), "b64Url": rid, "b64Std": base64.b64encode(raw).decode(),
                     "dec": str(int.from_bytes(raw, "big"))}
        elif typ == "random:index/randomPassword:RandomPassword":
            state = {"result": random_password(inputs)}
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs):
        """Answer aws:getCallerIdentity; NotImplementedError for any other call."""

        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/offline", "userId": "offline"}
        raise NotImplementedError(f"the offline run has no answer for the call {args.token}")


class _LoopClosingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The offline run's default executor. Pulumi's mock monitor answers in the executor's
    threads and sets an event loop in each (pulumi.runtime.sync_await._ensure_event_loop) that
    nothing closes; each task here closes the loop it left in its thread."""

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(_closing_the_thread_loop, fn, *args, **kwargs)


def _closing_the_thread_loop(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    finally:
        policy = asyncio.get_event_loop_policy()
        try:
            left = policy.get_event_loop()
        except RuntimeError:  # none set in this thread
            left = None
        if left is not None and not left.is_running():
            policy.set_event_loop(None)
            left.close()


def run(program: Callable[[], Any], config: dict[str, Any] | None = None, stack: str = "offline",
        secret_keys: list[str] | None = None, region: str | None = None) -> OfflineRun:
    """Run `program` under the mocks; returns every resource's inputs and the stack's outputs.

    `program` returns a dict of outputs (or nothing); anything passed to `pulumi.export`
    is collected too.
    """
    from pulumi.runtime import config as runtime_config
    from pulumi.runtime import settings as runtime_settings

    config = dict(config or {})
    # Pulumi's mocks run on the thread's current event loop; an earlier asyncio.run() in the
    # same process (a test, an opsctl command) leaves none set, so give them a fresh one.
    loop = asyncio.new_event_loop()
    loop.set_default_executor(_LoopClosingExecutor())
    asyncio.set_event_loop(loop)
    mocks = CapturingMocks(region or str(config.get("aws:region", "eu-west-1")))
    runtime_settings.set_root_resource(None)  # a fresh root stack: exports of an earlier run must not leak
    pulumi.runtime.set_mocks(mocks, project="transcribe", stack=stack, preview=False)
    runtime_config.set_all_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
                                  secret_keys or [])
    result = OfflineRun(resources=mocks.captured)

    @pulumi.runtime.test
    def _program():
        returned = program() or {}
        root = runtime_settings.get_root_resource()
        exported = dict(getattr(root, "outputs", {}) or {})
        return pulumi.Output.from_input({**exported, **returned}).apply(result.outputs.update)

    try:
        _program()
    finally:
        # Close what the run opened, as asyncio.run() does: the loop (an epoll and a socket
        # pair) and its executor. Left open, each run kept about 20 descriptors, and a
        # long-lived process (a pytest worker) went past 1024 (CI stop 51).
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()
    return result


def stack_config(program_dir: Path, stack: str) -> tuple[dict[str, Any], list[str]]:
    """The config of `Pulumi.<stack>.yaml`, with encrypted values replaced by placeholders."""
    path = Path(program_dir) / f"Pulumi.{stack}.yaml"
    raw = (yaml.safe_load(path.read_text()) or {}).get("config", {}) or {}
    config, secrets = {}, []
    for key, value in raw.items():
        if isinstance(value, dict) and "secure" in value:
            value, _ = PLACEHOLDER_SECRET, secrets.append(key)
        config[key] = value
    return config, secrets


def run_stack(program_dir: Path, stack: str) -> OfflineRun:
    """The whole program of `program_dir` with the config of one of its stacks. ValueError
    (naming the key) first when a string setting of the stack file is a YAML number, boolean,
    null, list or mapping (settings.check_yaml_types: the program itself sees only its text)."""
    from transcribe_infra.program import main
    from transcribe_infra.settings import check_yaml_types

    config, secrets = stack_config(program_dir, stack)
    check_yaml_types(config)
    return run(main, config, stack=stack, secret_keys=secrets)
