"""Who may connect and what each token may do: tokens, scopes and reach."""
