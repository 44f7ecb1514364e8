"""What a finished study gives: the report, export, confirm over fresh seeds and fine-tuning."""
