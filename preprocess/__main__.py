"""`python -m preprocess ...`: the same CLI as `nymeria-preprocess`."""

from preprocess.cli import main

if __name__ == "__main__":
    main()
