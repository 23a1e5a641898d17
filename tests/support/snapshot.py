"""The documented fields of the ``plugins list --json`` shape (docs/plugins.md), in one place."""

PLUGIN_FIELDS = frozenset(
    {
        "name",
        "distribution",
        "version",
        "entryPoint",
        "kind",
        "builtin",
        "hooks",
        "status",
        "error",
        "hookErrors",
        "engines",
    }
)
ENGINE_FIELDS = frozenset({"name", "class", "status", "error", "capabilities", "retryAttempt"})
ERROR_FIELDS = frozenset({"stage", "message", "type", "at"})
