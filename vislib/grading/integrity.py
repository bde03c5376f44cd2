"""What in a learner's cells looks like reaching into the grader: the checks, vislib's or torch's
internals, IPython's machinery, the process itself. Flags go to the instructor's report
(``integrity.csv``); they never change a grade, the instructor decides.

The scan reads the cells the learner wrote or changed, as code (``ast``), and names each route
once per cell. A cell that does not parse is scanned as text.
"""

from __future__ import annotations

import ast
import re

from vislib.grading.confine import PEER_LIBRARIES

# Names whose attributes a learner's code should read, never assign: modules and the checks.
_GUARDED_ROOTS = {"checks", "vislib", "torch", "nn", "F", "np", "numpy", "builtins", "sys", "os", "IPython",
                  "sklearn", "metrics", "plot", "saliency", "cam", "hooks", "style", "optimize", "embedding",
                  "activations", "adversarial", "models", "data", "math", "functools", "inspect", "types"}
_VISLIB_NAMES = {"vislib", "checks", "metrics", "plot", "saliency", "cam", "hooks", "style", "optimize", "embedding",
                 "activations", "adversarial", "models"}
_ATTRIBUTES = {
    "__code__": "copies or swaps a function's code (__code__)",
    "__wrapped__": "reaches behind a decorator (__wrapped__)",
    "__globals__": "reads a function's globals (__globals__)",
    "__closure__": "reads a function's closure (__closure__)",
    "__builtins__": "touches the builtins (__builtins__)",
    "__subclasses__": "walks the class tree (__subclasses__)",
    "f_back": "walks the call stack (f_back)",
    "f_locals": "reads another frame's variables (f_locals)",
    "f_globals": "reads another frame's globals (f_globals)",
    "input_transformers_cleanup": "changes how IPython reads cells (input transformers)",
    "input_transformers_post": "changes how IPython reads cells (input transformers)",
    "ast_transformers": "changes how IPython runs cells (AST transformers)",
    "set_custom_exc": "changes how IPython shows errors (set_custom_exc)",
    "showtraceback": "changes how IPython shows errors (showtraceback)",
    "excepthook": "changes how errors are shown (excepthook)",
    "setprofile": "switches the profiler (setprofile)",
    "settrace": "switches the tracer (settrace)",
    "modules": None,  # only sys.modules, below
    "_exit": "ends the process (os._exit)",
    "exit": None,  # sys.exit, below
    "kill": "sends signals to processes (kill)",
}
_CALLS = {
    "get_ipython": "uses IPython's machinery (get_ipython)",
    "exec": "runs code built at run time (exec)",
    "eval": "runs code built at run time (eval)",
    "compile": "builds code at run time (compile)",
    "__import__": "imports by name at run time (__import__)",
    "setattr": None,  # only on guarded roots, below
    "delattr": None,
    "exit": "ends the kernel (exit)",
    "quit": "ends the kernel (quit)",
    "open": "opens files",
    "globals": "reads the notebook's globals (globals())",
}
_MODULES = {
    "vislib.checks": "imports the checks' machinery (vislib.checks)",
    "vislib.grading": "imports the grader (vislib.grading)",
    "inspect": "inspects code (inspect)",
    "importlib": "imports or reloads modules at run time (importlib)",
    "gc": "walks the garbage collector's objects (gc)",
    "ctypes": "reaches memory directly (ctypes)",
    "threading": "runs code in threads (threading)",
    "concurrent": "runs code in threads or processes (concurrent.futures)",
    "multiprocessing": "starts processes (multiprocessing)",
    "subprocess": "starts processes (subprocess)",
    "signal": "handles signals (signal)",
    "atexit": "runs code at exit (atexit)",
    "IPython": "uses IPython's machinery (IPython)",
    "types": "builds functions or code objects (types)",
    "dis": "reads bytecode (dis)",
    "marshal": "loads code objects (marshal)",
    "pickle": "unpickles objects (pickle)",
    **{peer: f"imports a library that implements the exercises ({peer})" for peer in PEER_LIBRARIES},
}


def scan(source: str, off_limits_modules: tuple[str, ...] = ()) -> list[str]:
    """The routes ``source`` takes into the grader, in words (empty for ordinary code)."""
    try:
        tree = ast.parse(_without_magics(source))
    except SyntaxError:
        return _scan_text(source)
    found: list[str] = []

    def note(reason: str | None) -> None:
        if reason and reason not in found:
            found.append(reason)

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                for module, reason in _MODULES.items():
                    if name == module or name.startswith(module + "."):
                        note(reason)
                if any(name == m or name.startswith(m + ".") for m in off_limits_modules):
                    note(f"imports the module that implements this assignment's exercises ({name})")
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and (node.module or "").startswith("vislib"):
                    note(f"imports vislib's private helpers ({', '.join(private)})")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                for leaf in _leaves(target):
                    if isinstance(leaf, ast.Name) and leaf.id == "checks":
                        note("rebinds the name `checks`")
                    root = _root_name(leaf)
                    if isinstance(leaf, (ast.Attribute, ast.Subscript)) and root in _GUARDED_ROOTS:
                        note(f"patches {_dotted(leaf)}")
        elif isinstance(node, ast.Attribute):
            if node.attr == "modules" and _root_name(node) == "sys":
                note("reaches modules through sys.modules")
            elif node.attr == "exit" and _root_name(node) == "sys":
                note("ends the kernel (sys.exit)")
            elif _ATTRIBUTES.get(node.attr):
                note(_ATTRIBUTES[node.attr])
            if node.attr.startswith("_") and not node.attr.startswith("__") and _root_name(node) in _VISLIB_NAMES:
                note(f"uses vislib's private helpers ({_dotted(node)})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("setattr", "delattr") and node.args and _root_name(node.args[0]) in _GUARDED_ROOTS:
                note(f"patches {_dotted(node.args[0])} with {node.func.id}")
            elif _CALLS.get(node.func.id) and (node.func.id != "get_ipython" or "get_ipython" in source):
                note(_CALLS[node.func.id])  # (a magic such as %time becomes get_ipython(): not the learner's)
    return found


def _without_magics(source: str) -> str:
    """IPython's magics as Python (``%time x`` becomes a call), so the rest can be parsed."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _leaves(target: ast.AST) -> list[ast.AST]:
    if isinstance(target, (ast.Tuple, ast.List)):
        return [leaf for element in target.elts for leaf in _leaves(element)]
    if isinstance(target, ast.Starred):
        return _leaves(target.value)
    return [target]


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node: ast.AST) -> str:
    try:
        return ast.unparse(node)[:80]
    except Exception:  # noqa: BLE001 (a name for a message only)
        return "an attribute"


def _scan_text(source: str) -> list[str]:
    """For a cell that does not parse: the same routes, found as words."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", source))
    found = [reason for name, reason in {**_ATTRIBUTES, **_CALLS}.items() if reason and name in words]
    found += [reason for module, reason in _MODULES.items() if module.split(".")[-1] in words]
    return list(dict.fromkeys(found))
