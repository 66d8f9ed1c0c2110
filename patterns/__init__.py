"""The bundled pattern library: one `*.attn` file per published pattern family (data, no code).

This file makes `attngen.patterns` importable from an editable install too, where a
namespace package mapped outside `attngen/` is not found (`attngen.library.files()`).
"""
