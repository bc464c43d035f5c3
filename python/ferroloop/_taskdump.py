"""`dump_tasks()`: every task of a loop with its await chain, drawn as CPython 3.14's
`python -m asyncio pstree PID` draws a process's tasks, on every version and from inside.

Who awaits whom: 3.14+ records it (`asyncio.capture_call_graph`, public). Before 3.14 it is
inferred from what asyncio leaves on a task, the same on 3.10–3.13: its done callbacks name
the task awaiting it (its wake-up method) or its TaskGroup (whose `_parent_task` awaits
it), or close over the future some task awaits instead (gather's, shield's, wait()'s).
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
    coro: Any = task.get_coro()
    root = getattr(coro, "cr_frame", None)
    if live is not None and root is not None:
        # The task is running (we were called from inside it): its frames are the
        # thread's, from the caller up to the coroutine's own frame.
        frames: list[FrameType] = []
        f: FrameType | None = live
        while f is not None and f is not root:
            frames.append(f)
            f = f.f_back
        if f is not None:  # it is `root`
            frames.append(f)
            # (3.10 has no co_qualname: the coroutine's own frame takes its __qualname__.)
            return [_frame_label(fr, coro if fr is root else None) for fr in reversed(frames)]
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


def _awaiters_of(fut: Any, depth: int = 0) -> list[Any]:
    """The tasks waiting for `fut`, from its done callbacks (before 3.14): a task's wake-up
    method, a TaskGroup's `_on_task_done` (its `_parent_task` waits), or a closure over
    the future a task waits on instead (gather's outer future, shield's, wait()'s)."""
    out = []
    for cb in _callbacks(fut):
        owner = getattr(cb, "__self__", None)
        if isinstance(owner, asyncio.Task):
            out.append(owner)
        elif _TaskGroup is not None and isinstance(owner, _TaskGroup):
            parent = getattr(owner, "_parent_task", None)
            if parent is not None:
                out.append(parent)
        elif depth < 16:
            for cell in getattr(cb, "__closure__", None) or ():
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                if asyncio.isfuture(value) and value is not fut:
                    out.extend(_awaiters_of(value, depth + 1))
    return out


def awaiters(loop: Any, task: asyncio.Task[Any]) -> list[asyncio.Task[Any]]:
    """The tasks of `loop` that await `task` (directly, or through a TaskGroup, gather(),
    shield() or wait())."""
    found: dict[int, asyncio.Task[Any]] = {}
    if _PY314:
        graph = asyncio.capture_call_graph(task, limit=0)  # type: ignore[attr-defined]
        parents = [g.future for g in graph.awaited_by] if graph is not None else []
    else:
        parents = _awaiters_of(task)
    for parent in parents:
        if isinstance(parent, asyncio.Task) and parent is not task:
            if parent.get_loop() is loop:
                found.setdefault(id(parent), parent)
    return list(found.values())


def _edges(tasks: list[asyncio.Task[Any]]) -> list[tuple[asyncio.Task[Any], asyncio.Task[Any]]]:
    """(awaiter, awaited) pairs among `tasks`."""
    known = {id(t) for t in tasks}
    return [
        (parent, task)
        for task in tasks
        for parent in awaiters(task.get_loop(), task)
        if id(parent) in known
    ]


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
        errors = ["ERROR: await-graph contains cycles - cannot print a tree!", ""]
        for cycle in cycles:
            errors.append("cycle: " + " → ".join(t.get_name() for t in cycle))
        return errors

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
    """Print every pending task of `loop` (default: the running loop) with its await
    chain to `file` (default: sys.stderr).

    One tree per task that no other task awaits, drawn as CPython 3.14's `python -m
    asyncio pstree PID` draws a process's tasks (`(T) name` for a task, `qualname
    file:line` for each coroutine frame), after a header line naming the loop. Works on
    every supported version, on any asyncio loop, from inside a task (which then shows
    its live stack) or from outside the loop's thread.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    _dump(loop, file, sys._getframe(1))


def _dump(loop: Any, file: TextIO | None, frame: FrameType | None) -> None:
    if not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"dump_tasks() needs an event loop, not {type(loop).__name__}")
    out = sys.stderr if file is None else file
    lines = format_tasks(loop, frame)
    count = len(asyncio.all_tasks(loop))
    header = f"{count} task{'s' if count != 1 else ''} on {loop!r}"
    print("\n".join([header, *lines]), file=out, flush=True)
