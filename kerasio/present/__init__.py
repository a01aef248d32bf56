"""How kerasio shows things: text tables within 100 columns with every string escaped (:mod:`.text`), and the HTML
of notebook displays and the report page (:mod:`.html`)."""
