"""Normalizing what identifies a contact: email addresses, countries, phone numbers.

Pure functions (no I/O). The rules are tables in ``docs/mapping.md``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email


# --------------------------------------------------------------------------- email
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FAST_EMAIL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+[A-Za-z]{{1,63}}")
_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def _fast_email_ok(email: str) -> bool:
    """A cheap test accepting only plain ASCII addresses that email-validator also accepts.

    ``False`` means "not sure" (the caller then asks email-validator), never "invalid".
    """
    if len(email) > 254 or _FAST_EMAIL.fullmatch(email) is None:
        return False
    local, _, domain = email.rpartition("@")
    if len(local) > 64 or len(domain) > 253 or "--" in domain:
        return False
    domain = domain.lower()
    tld = domain.rpartition(".")[2]
    if tld in _SPECIAL_USE or domain in _SPECIAL_USE:
        return False
    for special in _SPECIAL_USE:
        if domain.endswith("." + special):
            return False
    return True


def is_valid_email(email: str) -> bool:
    """``email_validator.validate_email(check_deliverability=False)`` accepts it (fast path first)."""
    if _fast_email_ok(email):
        return True
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    except Exception:  # noqa: BLE001 - garbage input must never escape
        return False
    return True


# --------------------------------------------------------------------------- countries
def _country_key(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = text.replace("&", " and ")
    text = re.sub(r"[.,'’()]", "", text)
    text = re.sub(r"[\s_-]+", " ", text).strip()
    if text.startswith("the "):
        text = text[4:]
    return text


# Common English and local names and codes that CLDR display names (below) miss.
_COMMON_COUNTRY_NAMES: dict[str, str] = {
    "usa": "US", "us": "US", "u s a": "US", "united states": "US", "united states of america": "US",
    "america": "US", "estados unidos": "US", "etats unis": "US", "vereinigte staaten": "US",
    "uk": "GB", "united kingdom": "GB", "great britain": "GB", "britain": "GB", "england": "GB",
    "scotland": "GB", "wales": "GB", "northern ireland": "GB", "gbr": "GB",
    "united kingdom of great britain and northern ireland": "GB",
    "deutschland": "DE", "germany": "DE", "deu": "DE", "allemagne": "DE", "alemania": "DE",
    "holland": "NL", "netherlands": "NL", "nederland": "NL", "nld": "NL",
    "russia": "RU", "russian federation": "RU", "south korea": "KR", "korea": "KR",
    "republic of korea": "KR", "korea republic of": "KR", "north korea": "KP",
    "czech republic": "CZ", "czechia": "CZ", "turkey": "TR", "turkiye": "TR",
    "vietnam": "VN", "viet nam": "VN", "ivory coast": "CI", "cote divoire": "CI",
    "uae": "AE", "united arab emirates": "AE", "hong kong": "HK", "hong kong sar": "HK",
    "hong kong sar china": "HK", "macau": "MO", "macao": "MO", "taiwan": "TW", "iran": "IR",
    "syria": "SY", "bolivia": "BO", "venezuela": "VE", "tanzania": "TZ", "laos": "LA",
    "moldova": "MD", "brunei": "BN", "cape verde": "CV", "swaziland": "SZ", "eswatini": "SZ",
    "burma": "MM", "myanmar": "MM", "republic of ireland": "IE", "ireland": "IE", "eire": "IE",
    "schweiz": "CH", "suisse": "CH", "svizzera": "CH", "switzerland": "CH", "osterreich": "AT",
    "austria": "AT", "espana": "ES", "spain": "ES", "italia": "IT", "italy": "IT", "france": "FR",
    "belgique": "BE", "belgie": "BE", "belgium": "BE", "sverige": "SE", "sweden": "SE",
    "norge": "NO", "norway": "NO", "danmark": "DK", "denmark": "DK", "suomi": "FI", "finland": "FI",
    "polska": "PL", "poland": "PL", "brasil": "BR", "brazil": "BR", "mexico": "MX", "canada": "CA",
    "australia": "AU", "new zealand": "NZ", "japan": "JP", "nippon": "JP", "china": "CN",
    "peoples republic of china": "CN", "india": "IN", "south africa": "ZA", "singapore": "SG",
    "israel": "IL", "portugal": "PT", "greece": "GR", "hellas": "GR", "hungary": "HU",
    "magyarorszag": "HU", "romania": "RO", "argentina": "AR", "chile": "CL", "colombia": "CO",
    "palestine": "PS", "vatican": "VA", "vatican city": "VA", "kosovo": "XK",
    "can": "CA", "aus": "AU", "fra": "FR", "esp": "ES", "ita": "IT", "che": "CH", "aut": "AT",
    "bel": "BE", "swe": "SE", "nor": "NO", "dnk": "DK", "fin": "FI", "irl": "IE", "prt": "PT",
    "pol": "PL", "mex": "MX", "bra": "BR", "jpn": "JP", "chn": "CN", "ind": "IN", "nzl": "NZ",
    "zaf": "ZA", "sgp": "SG", "hkg": "HK", "are": "AE", "isr": "IL", "kor": "KR", "arg": "AR",
    "chl": "CL", "col": "CO", "cze": "CZ", "grc": "GR", "hun": "HU", "rou": "RO", "tur": "TR",
}

_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)
_country_table: dict[str, str] | None = None
_country_cache: dict[str, str | None] = {}
_COUNTRY_CACHE_MAX = 4096


def _build_country_table() -> dict[str, str]:
    """ISO alpha-2 codes, the common names above, and CLDR display names in every language."""
    table: dict[str, str] = {}
    ambiguous: set[str] = set()
    try:
        from phonenumbers.geodata.locale import LOCALE_DATA  # ~0.5 s, once, on first unknown name
    except Exception:  # noqa: BLE001 - names only improve matching
        LOCALE_DATA = {}
    for region in sorted(LOCALE_DATA):
        if region not in _REGIONS:
            continue
        names = LOCALE_DATA[region]
        for lang in sorted(names):
            name = names[lang]
            for _ in range(4):  # '*xx' points at another language's entry
                if isinstance(name, str) and name.startswith("*"):
                    name = names.get(name[1:])
            if not isinstance(name, str) or not name:
                continue
            key = _country_key(name)
            if not key:
                continue
            if key in table and table[key] != region:
                ambiguous.add(key)
            else:
                table[key] = region
    for key in ambiguous:
        table.pop(key, None)
    table.update(_COMMON_COUNTRY_NAMES)
    for region in _REGIONS:
        table[region.lower()] = region
    return table


def country_to_region(country: Any) -> str | None:
    """The phonenumbers region code (``"US"``) for a Klaviyo country name or ISO code, else ``None``."""
    if not isinstance(country, str):
        return None
    cached = _country_cache.get(country, False)
    if cached is not False:
        return cached  # type: ignore[return-value]
    text = country.strip()
    region: str | None = None
    if len(text) == 2 and text.isascii() and text.upper() in _REGIONS:
        region = text.upper()
    elif text:
        key = _country_key(text)
        region = _COMMON_COUNTRY_NAMES.get(key)
        if region is None:
            global _country_table
            if _country_table is None:
                _country_table = _build_country_table()
            region = _country_table.get(key)
    if len(_country_cache) < _COUNTRY_CACHE_MAX:
        _country_cache[country] = region
    return region


_LOCALE_REGION = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z]{4})?[-_]([A-Za-z]{2})(?:$|[-_.@])")


def _locale_region(locale: Any) -> str | None:
    if not isinstance(locale, str):
        return None
    m = _LOCALE_REGION.match(locale.strip())
    if m is None:
        return None
    region = m.group(1).upper()
    return region if region in _REGIONS else None


# --------------------------------------------------------------------------- phone
_PHONE_JUNK = re.compile(r"[^\d+]")


def parse_phone(raw: str, region: str | None) -> str | None:
    """``raw`` as an E.164 number, or ``None`` when it is not a valid number.

    Numbers starting with ``+`` (or ``00``/another international prefix of ``region``) are
    read as international; others as national numbers of ``region`` (none: invalid).
    """
    text = raw.strip()
    if not text or len(text) > 64:
        return None
    try:
        number = phonenumbers.parse(text, region if region else None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


