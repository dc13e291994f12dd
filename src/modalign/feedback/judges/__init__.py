"""Model judges: a loaded policy asked about an example's media (`ask`), claim-level verification (`claims`)."""
