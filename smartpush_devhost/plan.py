"""The merchant's plan, per store. Integrations (``*_sync`` features) need ``pro``."""

from __future__ import annotations

from sqlalchemy import select

from hookspecs.fastsql import dialect_insert
from smartpush_devhost.models import plans_t, utcnow
from smartpush_devhost.storage import SqlStorage

PLAN_FEATURES: dict[str, frozenset[str]] = {
    "free": frozenset(),
    "pro": frozenset({"integrations", "klaviyo_sync"}),
}
"""Features per plan. ``pro`` also allows any ``<integration>_sync`` feature."""

DEFAULT_PLAN = "pro"
"""The development host gives every store the plan that includes integrations."""


def plan_allows(plan: str, feature: str) -> bool:
    """Whether ``plan`` includes ``feature``."""
    features = PLAN_FEATURES.get(plan, frozenset())
    if feature in features:
        return True
    return "integrations" in features and feature.endswith("_sync")


class SqlPlan:
    """Implements :class:`hookspecs.interfaces.Plan` for one ``store_id``.

    Reads the stored plan on every call, so a downgrade is seen by a running sync.
    """

    def __init__(self, storage: SqlStorage, store_id: str, default: str = DEFAULT_PLAN):
        self.storage = storage
        self.store_id = store_id
        self.default = default

    def __repr__(self) -> str:
        return f"SqlPlan(store_id={self.store_id!r})"

    @property
    def name(self) -> str:
        """The store's current plan name."""
        with self.storage.transaction(readonly=True) as tx:
            plan = tx.execute(select(plans_t.c.plan).where(plans_t.c.store_id == self.store_id)).scalar_one_or_none()
        return plan or self.default

    def allows(self, feature: str) -> bool:
        """Whether the store's current plan includes ``feature`` (e.g. ``"klaviyo_sync"``)."""
        return plan_allows(self.name, feature)

    def set(self, plan: str) -> None:
        """Change the store's plan (host side: ``smartpush plan set``)."""
        if plan not in PLAN_FEATURES:
            raise ValueError(f"unknown plan {plan!r}; choose one of {', '.join(sorted(PLAN_FEATURES))}")
        with self.storage.transaction() as tx:
            now = utcnow()
            stmt = dialect_insert(tx, plans_t).values(store_id=self.store_id, plan=plan, updated_at=now)
            tx.execute(stmt.on_conflict_do_update(index_elements=[plans_t.c.store_id], set_={"plan": plan, "updated_at": now}))
