"""The Gradio demo of imagerec."""
