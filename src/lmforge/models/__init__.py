"""Model families. Every model is built from its config by one registry (`registry.build_model`)."""
