"""robopt subpackage."""
