"""Aligning the profile generator: DPO and SFT LightningModules, their DataModule, the TRL path."""
