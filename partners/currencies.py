"""ISO 4217 alphabetic codes of current currencies and funds, from a maintained source.

The `iso4217` package ships list one exactly as the ISO 4217 maintenance agency
publishes it, and is re-released with every new list (its version ends with the
publication date: 1.16.20260101 is the list of 2026-01-01). Codes that enter the list
(XCG, the Caribbean guilder, since 2025) are accepted and withdrawn ones (ANG, 2025-03)
refused by moving the pin in requirements.txt and the locks, never by editing code.
"""

import iso4217

ISO_4217_PUBLISHED = iso4217.__published__
ISO_4217_CODES = frozenset(currency.code for currency in iso4217.Currency)
