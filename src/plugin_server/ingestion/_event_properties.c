/* Two passes of the enrich step over every event's properties (pipeline.py), made here because in
   Python each cost about a microsecond per event: a dozen keys looked at one by one.

   `collect_names(events)`: for the definitions (definitions.py), of (team_id, event name, properties)
   triples, by team: {team_id: (event names, property keys, keys holding a number)}. A number is an
   int or a float exactly, as `typeof value === 'number'` sees JSON values (a bool is not one).

   `campaign_and_initial(properties, campaign, initial)`: rules 25-26 (rules.py). Each is a tuple of
   (key, name) pairs: the keys of `campaign` the properties hold go into `$set`, those of `initial`
   into `$set_once`, each under its name, in the pairs' order. Both override what the event set, and
   both dicts are replaced, not changed: {**current, **found}, or `found` alone when the current value
   is not a dict.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *set_key, *set_once_key;

/* The three sets of `team` in `by_team`, made on its first event (a borrowed reference). */
static PyObject *sets_of(PyObject *by_team, PyObject *team) {
    PyObject *sets = PyDict_GetItemWithError(by_team, team);
    if (sets != NULL || PyErr_Occurred())
        return sets;
    sets = PyTuple_New(3);
    if (sets == NULL)
        return NULL;
    for (int i = 0; i < 3; i++) {
        PyObject *made = PySet_New(NULL);
        if (made == NULL) {
            Py_DECREF(sets);
            return NULL;
        }
        PyTuple_SET_ITEM(sets, i, made);
    }
    int stored = PyDict_SetItem(by_team, team, sets);
    Py_DECREF(sets); /* by_team holds it */
    return stored < 0 ? NULL : sets;
}

static int add_event(PyObject *by_team, PyObject *triple) {
    if (!PyTuple_Check(triple) || PyTuple_GET_SIZE(triple) != 3 || !PyDict_Check(PyTuple_GET_ITEM(triple, 2))) {
        PyErr_SetString(PyExc_TypeError, "collect_names takes (team_id, event name, properties dict) triples");
        return -1;
    }
    PyObject *sets = sets_of(by_team, PyTuple_GET_ITEM(triple, 0));
    if (sets == NULL || PySet_Add(PyTuple_GET_ITEM(sets, 0), PyTuple_GET_ITEM(triple, 1)) < 0)
        return -1;
    PyObject *keys = PyTuple_GET_ITEM(sets, 1), *numerical = PyTuple_GET_ITEM(sets, 2);
    PyObject *key, *value;
    Py_ssize_t at = 0;
    while (PyDict_Next(PyTuple_GET_ITEM(triple, 2), &at, &key, &value)) {
        if (PySet_Add(keys, key) < 0)
            return -1;
        if ((PyLong_CheckExact(value) || PyFloat_CheckExact(value)) && PySet_Add(numerical, key) < 0)
            return -1;
    }
    return 0;
}

static PyObject *collect_names(PyObject *Py_UNUSED(module), PyObject *events) {
    PyObject *iterator = PyObject_GetIter(events);
    if (iterator == NULL)
        return NULL;
    PyObject *by_team = PyDict_New();
    PyObject *triple = NULL;
    while (by_team != NULL && (triple = PyIter_Next(iterator)) != NULL) {
        int added = add_event(by_team, triple);
        Py_DECREF(triple);
        if (added < 0)
            Py_CLEAR(by_team);
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred())
        Py_CLEAR(by_team);
    return by_team;
}

/* properties[target] = {**current, **found} if current is a dict, else found. */
static int merge_into(PyObject *properties, PyObject *target, PyObject *found) {
    PyObject *current = PyDict_GetItemWithError(properties, target);
    if (current == NULL && PyErr_Occurred())
        return -1;
    if (current == NULL || !PyDict_Check(current))
        return PyDict_SetItem(properties, target, found);
    PyObject *merged = PyDict_New();
    if (merged == NULL)
        return -1;
    Py_INCREF(current); /* a dict subclass's own methods may run in the update and change properties */
    int stored = PyDict_Update(merged, current) < 0 || PyDict_Update(merged, found) < 0
                     ? -1
                     : PyDict_SetItem(properties, target, merged);
    Py_DECREF(current);
    Py_DECREF(merged);
    return stored;
}

/* The values of the pairs' keys that `properties` holds, under the pairs' names: a new dict, maybe
   empty. */
static PyObject *found_in(PyObject *properties, PyObject *pairs) {
    PyObject *found = PyDict_New();
    for (Py_ssize_t i = 0; found != NULL && i < PyTuple_GET_SIZE(pairs); i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "campaign_and_initial takes tuples of (key, name) pairs");
            Py_CLEAR(found);
            break;
        }
        PyObject *value = PyDict_GetItemWithError(properties, PyTuple_GET_ITEM(pair, 0));
        if ((value == NULL && PyErr_Occurred()) ||
            (value != NULL && PyDict_SetItem(found, PyTuple_GET_ITEM(pair, 1), value) < 0))
            Py_CLEAR(found);
    }
    return found;
}

/* found_in, then merged into properties[target] if it found any; -1 on an error. */
static int move_found(PyObject *properties, PyObject *pairs, PyObject *target) {
    PyObject *found = found_in(properties, pairs);
    if (found == NULL)
        return -1;
    int moved = PyDict_GET_SIZE(found) ? merge_into(properties, target, found) : 0;
    Py_DECREF(found);
    return moved;
}

static PyObject *campaign_and_initial(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyDict_Check(args[0]) || !PyTuple_Check(args[1]) || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "campaign_and_initial(properties: dict, campaign: tuple, initial: tuple)");
        return NULL;
    }
    if (move_found(args[0], args[1], set_key) < 0 || move_found(args[0], args[2], set_once_key) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef METHODS[] = {
    {"collect_names", collect_names, METH_O,
     "collect_names(events) -> dict\n\nEvent names, property keys and numerical keys by team (see "
     "_event_properties.c)."},
    {"campaign_and_initial", (PyCFunction)(void (*)(void))campaign_and_initial, METH_FASTCALL,
     "campaign_and_initial(properties, campaign, initial) -> None\n\nRules 25-26 (see "
     "_event_properties.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_event_properties", NULL, 0, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__event_properties(void) {
    set_key = PyUnicode_InternFromString("$set");
    set_once_key = PyUnicode_InternFromString("$set_once");
    if (set_key == NULL || set_once_key == NULL)
        return NULL;
    return PyModule_Create(&MODULE);
}
