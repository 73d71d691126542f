"""Task-driven evaluation of profiles (rewards) and preference pairs."""
