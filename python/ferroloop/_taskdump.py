"""`dump_tasks()`: every task of a loop with its await chain, drawn as CPython 3.14's
`python -m asyncio pstree PID` draws a process's tasks, on every version and from inside.

Who awaits whom: 3.14+ records it (`asyncio.capture_call_graph`, public). Before 3.14 it is
inferred from what asyncio leaves on the tasks, the same on 3.10–3.13: a task's done
callbacks name the task awaiting it (its wake-up method) or its TaskGroup (whose
`_parent_task` awaits it), and a task waiting on a `gather()` waits for its children.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections import defaultdict
from types import FrameType
from typing import Any, TextIO

_PY314 = sys.version_info >= (3, 14)
_TaskGroup: Any = getattr(asyncio, "TaskGroup", None)


def _frame_label(frame: FrameType, coro: Any = None) -> str:
    code = frame.f_code
    name = getattr(code, "co_qualname", None) or getattr(coro, "__qualname__", code.co_name)
    return f"{name} {code.co_filename}:{frame.f_lineno}"


def _coro_stack(task: asyncio.Task[Any], live: FrameType | None) -> list[str]:
    """The task's coroutine stack, outermost first, as pstree labels its frames."""
    coro = task.get_coro()
    root = getattr(coro, "cr_frame", None)
    if live is not None and root is not None:
        # The task is running (we were called from inside it): its frames are the
        # thread's, from the caller up to the coroutine's own frame.
        frames = []
        f: FrameType | None = live
        while f is not None and f is not root:
            frames.append(f)
            f = f.f_back
        if f is root:
            frames.append(root)
            return [_frame_label(fr) for fr in reversed(frames)]
    stack = []
    while coro is not None:
        if hasattr(coro, "cr_await"):
            frame, nxt = coro.cr_frame, coro.cr_await
        elif hasattr(coro, "ag_await"):
            frame, nxt = coro.ag_frame, coro.ag_await
        elif hasattr(coro, "gi_yieldfrom"):
            frame, nxt = coro.gi_frame, coro.gi_yieldfrom
        else:
            break
        if frame is not None:
            stack.append(_frame_label(frame, coro))
        elif getattr(coro, "__qualname__", None):
            stack.append(coro.__qualname__)  # a native awaitable: ferroloop's sock_* calls
        coro = nxt
    return stack


def _callbacks(fut: Any) -> list[Any]:
    return [entry[0] for entry in getattr(fut, "_callbacks", None) or ()]


def _gathered(fut: Any) -> list[Any]:
    """The tasks under a gather() future, through nested gathers."""
    out = []
    for child in getattr(fut, "_children", None) or ():
        if isinstance(child, asyncio.Task):
            out.append(child)
        else:
            out.extend(_gathered(child))
    return out


def _edges(tasks: list[asyncio.Task[Any]]) -> list[tuple[asyncio.Task[Any], asyncio.Task[Any]]]:
    """(awaiter, awaited) pairs among `tasks`, without duplicates."""
    known = {id(t) for t in tasks}
    pairs: dict[tuple[int, int], tuple[asyncio.Task[Any], asyncio.Task[Any]]] = {}

    def add(parent: Any, child: asyncio.Task[Any]) -> None:
        if isinstance(parent, asyncio.Task) and id(parent) in known and parent is not child:
            pairs.setdefault((id(parent), id(child)), (parent, child))

    for task in tasks:
        if _PY314:
            graph = asyncio.capture_call_graph(task, limit=0)
            for awaiter in graph.awaited_by if graph is not None else ():
                add(awaiter.future, task)
            continue
        for cb in _callbacks(task):
            owner = getattr(cb, "__self__", None)
            if _TaskGroup is not None and isinstance(owner, _TaskGroup):
                owner = getattr(owner, "_parent_task", None)
            add(owner, task)
        waiter = getattr(task, "_fut_waiter", None)
        if waiter is not None and not isinstance(waiter, asyncio.Task):
            for child in _gathered(waiter):
                add(task, child)
    return list(pairs.values())


def awaiters(loop: Any, task: asyncio.Task[Any]) -> list[asyncio.Task[Any]]:
    """The tasks of `loop` that await `task`."""
    tasks = list(asyncio.all_tasks(loop))
    return [parent for parent, child in _edges(tasks) if child is task]


def _natural(text: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def format_tasks(loop: Any, frame: FrameType | None = None) -> list[str]:
    """The pstree lines for `loop`'s tasks; `frame` is where the caller runs (so the
    current task, if any, shows its live stack)."""
    tasks = sorted(asyncio.all_tasks(loop), key=lambda t: _natural(t.get_name()))
    if not tasks:
        return []
    current = asyncio.current_task(loop) if loop.is_running() else None
    stacks = {id(t): _coro_stack(t, frame if t is current else None) for t in tasks}
    edges = _edges(tasks)
    cycles = _find_cycles(edges)
    if cycles:
        lines = ["ERROR: await-graph contains cycles - cannot print a tree!", ""]
        for cycle in cycles:
            lines.append("cycle: " + " → ".join(t.get_name() for t in cycle))
        return lines

    # As asyncio.tools._build_tree: a task node holds the awaiter's frames, under which
    # the tasks it awaits hang; a task that awaits no task shows its own stack.
    labels: dict[Any, str] = {}
    children: dict[Any, list[Any]] = defaultdict(list)
    frame_nodes: dict[Any, dict[str, Any]] = defaultdict(dict)

    def frame_node(parent: Any, label: str) -> Any:
        node = frame_nodes[parent].get(label)
        if node is None:
            node = ("frame", len(labels))
            labels[node] = label
            children[parent].append(node)
            frame_nodes[parent][label] = node
        return node

    for t in tasks:
        labels[("task", id(t))] = t.get_name()
    for parent, child in edges:
        cur: Any = ("task", id(parent))
        for label in stacks[id(parent)]:
            cur = frame_node(cur, label)
        if ("task", id(child)) not in children[cur]:
            children[cur].append(("task", id(child)))
    awaiting = {id(parent) for parent, _ in edges}
    for t in tasks:
        if id(t) not in awaiting:
            cur = ("task", id(t))
            for label in stacks[id(t)]:
                cur = frame_node(cur, label)

    def render(node: Any, prefix: str, last: bool, out: list[str]) -> None:
        flag = "(T)" if node[0] == "task" else ""
        out.append(f"{prefix}{'└── ' if last else '├── '}{flag} {labels[node]}")
        prefix += "    " if last else "│   "
        kids = children.get(node, [])
        for i, kid in enumerate(kids):
            render(kid, prefix, i == len(kids) - 1, out)

    awaited = {kid for kids in children.values() for kid in kids}
    lines: list[str] = []
    for t in tasks:
        node = ("task", id(t))
        if node not in awaited:
            render(node, "", True, lines)
    return lines


def _find_cycles(edges: list[tuple[Any, Any]]) -> list[list[Any]]:
    graph: dict[int, list[Any]] = defaultdict(list)
    for parent, child in edges:
        graph[id(parent)].append(child)
    state: dict[int, int] = {}
    path: list[Any] = []
    cycles: list[list[Any]] = []

    def visit(task: Any) -> None:
        state[id(task)] = 1
        path.append(task)
        for child in graph.get(id(task), ()):
            if state.get(id(child)) is None:
                visit(child)
            elif state[id(child)] == 1:
                cycles.append(path[path.index(child) :] + [child])
        state[id(task)] = 2
        path.pop()

    for parent, _ in edges:
        if id(parent) not in state:
            visit(parent)
    return cycles


def dump_tasks(loop: Any = None, file: TextIO | None = None) -> None:
    """Print every task of `loop` (default: the running loop) with its await chain, as
    3.14's `python -m asyncio pstree` draws them, to `file` (default: sys.stderr)."""
    caller = sys._getframe(1)
    if loop is None:
        loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"dump_tasks() needs an event loop, not {type(loop).__name__}")
    out = sys.stderr if file is None else file
    lines = format_tasks(loop, caller)
    count = len(asyncio.all_tasks(loop))
    header = f"{count} task{'s' if count != 1 else ''} on {loop!r}"
    print("\n".join([header, *lines]), file=out, flush=True)
