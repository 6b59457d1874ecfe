"""Lists and segments: reconciling them each run (:mod:`.reconcile`) and verifying each
one's membership within Klaviyo's limits (:mod:`.checks`)."""

from smartpush_plugin_klaviyo.groups.checks import GroupPlan, MembershipChecks, Scheduler, rescan_turns
from smartpush_plugin_klaviyo.groups.reconcile import GROUP_ENDPOINTS, GROUP_FIELDS, apply_groups, fetch_groups

__all__ = [
    "GROUP_ENDPOINTS",
    "GROUP_FIELDS",
    "apply_groups",
    "fetch_groups",
    "GroupPlan",
    "MembershipChecks",
    "Scheduler",
    "rescan_turns",
]
