"""What only the dashboard reads, still free of streamlit: the store as DataFrames (`frames`), DataFrames as
Plotly figures (`charts`), a run's cost before it runs (`forecast`) and the Learn page's worked examples
(`teach`). The library below never imports this package."""
