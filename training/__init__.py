"""Fine-tuning towerzoo models on `transformers.Trainer` (`towerzoo finetune TASK …`)."""


class TrainingError(ValueError):
    """Bad input to a fine-tuning run (data, model or options); the message names the problem and the fix."""
