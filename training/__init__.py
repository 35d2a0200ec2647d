"""Fine-tuning towerzoo models on `transformers.Trainer` (`towerzoo finetune TASK …`)."""
