"""servectl's version: recorded in state files, saved plans and history entries (as Terraform records its own)."""
__version__ = "0.1.0"
