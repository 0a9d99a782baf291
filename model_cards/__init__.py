"""Model card templates; the wheel installs this folder as the `oto_hf.templates` package."""
