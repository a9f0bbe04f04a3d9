"""Sessions: one call's state (``session``), the store that bounds and continues them (``store``),
the registry that lets another instance continue a call (``registry``), and transcripts."""
