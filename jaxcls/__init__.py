"""jaxcls: fine-tune Qwen3 as a text classifier in JAX/Flax with LoRA and contrastive losses."""
