"""Execute a notebook headless with nbclient, in its own folder (as Colab would run it).

usage: run_notebook.py NOTEBOOK
"""
import os, sys

import nbclient, nbformat

path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
nbformat.validate(nb)
nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
nbformat.write(nb, path + ".executed.ipynb")
