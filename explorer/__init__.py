"""SAE Explorer's Gradio UI: ``explorer.ui.build_app(backend)``; tabs in explorer/tabs, pure rendering in render.py.

Never imports torch: the Backend facade (backend/serve/service.py) hands it plain values.
"""
