"""The analytics dashboard over the imagerec prediction log: `streamlit run dashboard/app.py`."""
