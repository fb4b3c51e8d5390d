"""Optional integrations with other Keras libraries, each behind its own extra.

Nothing is imported here: `import losskit.integrations.keras_hub` (extra `losskit[keras-hub]`)
loads keras-hub, and the core never does.
"""
