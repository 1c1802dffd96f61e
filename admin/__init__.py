"""chatsrv-admin: the administrator's command line for a running chatsrv (imported as chatsrv_admin)."""
