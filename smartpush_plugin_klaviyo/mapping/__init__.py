"""Pure mapping from Klaviyo resources to SmartPush contacts, tags and statuses.

No I/O, no database. Every rule here is written down as tables in ``docs/mapping.md``;
keep the two in step. One module per concern:

- :mod:`.normalize`: email addresses, countries, phone numbers;
- :mod:`.profile`: one profile resource to contact fields (:func:`map_profile`);
- :mod:`.merge`: merge and consent rules when a profile meets an existing contact, and
  the one :class:`Contact` <-> :class:`NewContact` conversion;
- :mod:`.tags`: list and segment tags.
"""

from smartpush_plugin_klaviyo.mapping.merge import (
    as_contact,
    as_new_contact,
    merge_into,
    new_contact,
    owned_fields_of,
)
from smartpush_plugin_klaviyo.mapping.normalize import country_to_region, is_valid_email, parse_phone
from smartpush_plugin_klaviyo.mapping.profile import (
    MAX_PROPERTIES_BYTES,
    MAX_PROPERTY_BYTES,
    PREFIX,
    RESERVED_PROPERTY_KEYS,
    STANDARD_FIELDS,
    MappedProfile,
    Skip,
    map_profile,
    merge_status,
)
from smartpush_plugin_klaviyo.mapping.tags import Collision, GroupInfo, assign_tags, base_tag, normalize_group_name

__all__ = [
    "MAX_PROPERTY_BYTES",
    "MAX_PROPERTIES_BYTES",
    "PREFIX",
    "RESERVED_PROPERTY_KEYS",
    "STANDARD_FIELDS",
    "Collision",
    "GroupInfo",
    "MappedProfile",
    "Skip",
    "as_contact",
    "as_new_contact",
    "assign_tags",
    "base_tag",
    "country_to_region",
    "is_valid_email",
    "map_profile",
    "merge_into",
    "merge_status",
    "new_contact",
    "normalize_group_name",
    "owned_fields_of",
    "parse_phone",
]
