"""Results you can look at: the fit's figures (Bumps' own plotting code) and the one-file report."""
