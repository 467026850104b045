"""Text as the models see it: chat templates rendered into tokens with the assistant's spans."""
