"""Human-readable rendering of contract values and PII masking for the CLI."""

from __future__ import annotations

from datetime import datetime

from hookspecs.types import IntegrationStatus, SyncReport


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def _pairs(mapping: dict, sep: str = ", ") -> str:
    return sep.join(f"{k}={v}" for k, v in sorted(mapping.items())) or "-"


def format_status(status: IntegrationStatus) -> str:
    """Several lines describing an integration's status (no secrets, no PII)."""
    lines = [
        f"integration:          {status.integration}",
        f"store:                {status.store_id}",
        f"installed:            {'yes' if status.installed else 'no'}",
        f"state:                {status.state.value}",
    ]
    if status.pause_reason is not None:
        detail = f" ({status.pause_detail})" if status.pause_detail else ""
        lines.append(f"pause reason:         {status.pause_reason.value}{detail}")
    if status.phase:
        lines.append(f"phase:                {status.phase}")
    lines += [
        f"last sync started:    {_when(status.last_sync_started_at)}",
        f"last successful sync: {_when(status.last_successful_sync_at)}",
        f"next sync:            {_when(status.next_sync_at)}",
    ]
    if status.counts:
        lines.append(f"counts:               {_pairs(status.counts)}")
    return "\n".join(lines)


def format_report(report: SyncReport, max_skipped: int = 20) -> str:
    """The summary of one sync run."""
    took = ""
    if report.started_at and report.finished_at:
        took = f" in {(report.finished_at - report.started_at).total_seconds():.1f} s"
    resumed = " (resumed)" if report.resumed else ""
    lines = [f"{report.integration} {report.mode} sync of store {report.store_id}: {report.outcome}{took}{resumed}"]
    if report.message:
        lines.append(f"  {report.message}")
    if report.counts:
        lines.append("  counts:")
        lines += [f"    {k:<28} {v}" for k, v in sorted(report.counts.items())]
    if report.requests:
        lines.append("  requests:")
        lines += [f"    {k:<52} {v}" for k, v in sorted(report.requests.items())]
    if report.skipped and max_skipped > 0:
        total = report.counts.get("skipped", len(report.skipped))
        lines.append(f"  skipped (showing {min(len(report.skipped), max_skipped)} of {total}):")
        lines += [f"    {s.source_id}: {s.reason}" for s in report.skipped[:max_skipped]]
    for warning in report.warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)


def mask_email(email: str | None) -> str:
    """``alice@example.com`` -> ``a***@example.com``."""
    if not email:
        return "-"
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else f"{local[:1]}***"


def mask_phone(phone: str | None) -> str:
    """``+14155550123`` -> ``+*********23``."""
    if not phone:
        return "-"
    return phone[:1] + "*" * max(len(phone) - 3, 0) + phone[-2:]


def mask_name(name: str | None) -> str:
    """``Alice Smith`` -> ``A*** S***``."""
    if not name:
        return "-"
    return " ".join(f"{part[:1]}***" for part in name.split())
