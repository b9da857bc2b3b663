"""`opsctl render monitoring`: Prometheus scrape config, alert rules and Grafana dashboards.

Rendered from the templates in `templates/monitoring/` with the environment's thresholds,
the very values `opsctl health` judges with, so an alert and a sweep never disagree about
what "too slow" means. Every file is parsed before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml

from opsctl.config import Environment, Project
from opsctl.errors import UsageError
from opsctl.templating import parse_yaml, render

COLOR_LABEL = "app_kubernetes_io_color"  # app.kubernetes.io/color, as Prometheus sanitizes it


def _values(project: Project, env: Environment) -> dict:
    from opsctl.pitr.health import seconds

    mon = env.monitoring
    rpo = seconds(env.dr.rpo)
    values = {
        "env": env.name, "platform": env.platform, "t": env.thresholds,
        "scrape_interval": mon.scrape_interval, "exporters": dict(mon.exporters),
        "runbook_url": mon.runbook_url.rstrip("/"), "health_target": mon.health_exporter,
        "worker_cores": mon.worker_cores or os.cpu_count() or 1,
        "namespace": env.kubernetes.namespace, "color_label": COLOR_LABEL,
        "workers": [], "router_admin": None, "metrics_port_name": _metrics_port_name(),
        # the WAL archive check's lag (seconds) against the RPO, as `opsctl health` judges it
        "uploads": {"incomplete": env.health.uploads.incomplete,
                    "oldest_incomplete_seconds": f"{env.health.uploads.oldest_incomplete_seconds:g}"},
        # a fleet KEDA scales to zero on purpose is idle, not down, until work arrives (wake_query)
        "scale_to_zero": (env.platform == "kubernetes" and env.worker.autoscaling.enabled
                          and env.worker.autoscaling.min_replicas == 0 and bool(env.worker.autoscaling.wake_query)),
        "wake_query": env.worker.autoscaling.wake_query,
        "drill": _drill(project, env),
        "rpo": env.dr.rpo, "monitoring_lag_fraction": mon.archive_lag_warning, "rpo_seconds": f"{rpo:g}", "lag_warning_seconds": f"{rpo * mon.archive_lag_warning:g}",
    }
    if env.platform == "local":
        from opsctl.local import procs
        from opsctl.local import state as st
        from opsctl.local import worker as wk

        comps = st.load(st.folder_for(project.root)).components
        if "router" not in comps:
            raise UsageError(f"the local platform of {project.root} was never started; run 'opsctl local up' "
                             "so the scrape config can name its ports")
        # the keyless /metrics listener (WORKER_METRICS_PORT) where the worker has one
        values["workers"] = [{"color": c, "target": f"{procs.HOST}:{_scrape_port(comps[wk.name(c)])}"}
                             for c in st.COLORS if wk.name(c) in comps]
        values["router_admin"] = f"{procs.HOST}:{comps['router'].admin_port}"
    return values


# A scheduled DR drill is missing once its schedule's longest gap plus this has passed since
# the last one started: a run may start late (GitHub delays scheduled workflows under load) and
# takes up to schedules.RUN_DEADLINE_SECONDS (3 h) before its metrics land; one day covers both,
# so a weekly drill missed once pages on the 8th day, before the next one is due.
DRILL_GRACE_SECONDS = 86400


def _drill(project: Project, env: Environment) -> dict | None:
    """The DR drill alerts' inputs, or None where the drill's metrics have no way to Prometheus.
    Their way is node_exporter's textfile collector (`dr drill --metrics-file`; the `dr-drill`
    runbook writes .opsctl/dr/drill.prom) on the host the drill runs on, scraped as the node
    exporter (monitoring.exporters.node). A kubernetes environment has none: its scheduled
    drill runs in a CronJob whose .opsctl is an emptyDir, gone with the pod. `stale_seconds`
    (None without one) comes from the schedule of the runbooks running the `dr-drill` action."""
    if env.platform == "kubernetes" or not env.monitoring.exporters.get("node"):
        return None
    from opsctl.runbook.actions import ACTIONS
    from opsctl.runbook.schedules import longest_gap_seconds, scheduled

    crons = sorted({s.cron for s in scheduled(project, ACTIONS) if "dr-drill" in s.actions})
    if not crons:
        return {"stale_seconds": None}
    stale = max(longest_gap_seconds(c) for c in crons) + DRILL_GRACE_SECONDS
    return {"stale_seconds": f"{stale:g}", "stale_days": f"{stale / 86400:g}", "schedule": ", ".join(crons)}


def _scrape_port(component) -> int:
    return getattr(component, "metrics_port", None) or component.port


def _metrics_port_name() -> str:
    """The worker container's port the scraper uses: its metrics listener when the
    manifests declare one, else the API port."""
    from opsctl.deploy import manifests

    return getattr(manifests, "METRICS_PORT_NAME", "http")


def render_all(project: Project, env: Environment) -> dict[str, str]:
    """Every file, by relative path; each one parsed, so a broken template fails here."""
    values = _values(project, env)
    root = project.root
    templates = {"prometheus.yml": "monitoring/prometheus.yml.j2",
                 "alert-rules.yml": "monitoring/alert-rules.yml.j2",
                 "dashboards/transcription-worker.json": "monitoring/dashboard-worker.json.j2"}
    files = {name: render(template, root, **values) for name, template in templates.items()}
    for name, text in files.items():
        if name.endswith(".json"):
            try:
                json.loads(text)
            except ValueError as exc:
                raise UsageError(f"rendered {name} does not parse ({exc}); fix its template") from None
        else:
            parse_yaml(templates[name], text)
    if env.platform == "kubernetes":
        rules = parse_yaml("monitoring/alert-rules.yml.j2", files["alert-rules.yml"])
        spec = "\n".join("  " + line for line in yaml.safe_dump(rules, sort_keys=False).splitlines())
        files["kubernetes/monitoring.yaml"] = render(
            "monitoring/prometheusrule.yaml.j2", root, **values, rules_spec=spec,
            dashboard=files["dashboards/transcription-worker.json"])
        parse_yaml("monitoring/prometheusrule.yaml.j2", files["kubernetes/monitoring.yaml"], many=True)
    return files


def render_to(project: Project, env: Environment, out: str | Path) -> list[Path]:
    """`opsctl render monitoring --out DIR`: `render_all`, then `write` into `out` (all or
    none). Returns the paths written. UsageError for an `out` given empty (Path("") is the
    current folder: the files landed wherever the command ran), and, before anything is
    written, for any file that would land where a report may not (`files.report_path`: an
    ops root's opsctl.yaml, runbooks/, stacks/, .git/, opsctl's state; a folder in the way;
    `out` a link to nothing).
    The rule every report option follows: `--out runbooks` wrote alert-rules.yml and
    dashboards/ into the runbooks folder the lock file vouches for (breaker 65)."""
    from opsctl import files as report_files
    from opsctl.errors import not_empty

    not_empty(str(out), "--out", "give the folder to write the files into, or leave --out out to print them")
    folder = Path(out)
    if folder.is_symlink() and not folder.exists():  # mkdir can't make it: FileExistsError (breaker 66 G3)
        raise UsageError(f"--out {out} is a link to {os.readlink(folder)}, which does not exist; make that "
                         "folder first, or give another")
    rendered = render_all(project, env)
    for name in rendered:
        report_files.report_path(Path(out) / name, "--out", make=False)
    return write(rendered, Path(out))


def write(files: dict[str, str], out: Path) -> list[Path]:
    """Write all files or none: into a temporary folder first, then moved in place."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".render-", dir=out))
    try:
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)
        written = []
        for name in files:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_NOT_METRICS = {"sum", "rate", "by", "le", "histogram_quantile", "clamp_min", "max", "avg", "changes",
                "up", "without", "on", "ignoring", "count", "min", "irate", "increase", "printf",
                "label_replace", "vector"}
# exported by others, not by the worker: kube-state-metrics, opsctl's health exporter, node exporter
_OTHER_EXPORTERS = ("kube_", "opsctl_", "node_")


def metric_names(files: dict[str, str]) -> set[str]:
    """The worker's metric names the rules and dashboards query (for checking it exports them);
    metrics of kube-state-metrics, the health exporter and the node exporter are left out."""
    exprs = [r["expr"] for g in yaml.safe_load(files["alert-rules.yml"])["groups"] for r in g["rules"]]
    board = json.loads(files["dashboards/transcription-worker.json"])
    exprs += [t["expr"] for p in board["panels"] for t in p["targets"]]
    names = set()
    for expr in exprs:
        expr = re.sub(r'\{[^}]*\}', "", expr)  # label matchers
        expr = re.sub(r'"[^"]*"', "", expr)
        for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
            if word not in _NOT_METRICS and "_" in word and not word.startswith(_OTHER_EXPORTERS):
                names.add(re.sub(r"_(bucket|sum|count)$", "", word) if word.endswith("_bucket") else word)
    return names
