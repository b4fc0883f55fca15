/* The plain records of a guest's find listing, parsed in C (guest.py: ListingParser).

   Parsing the base tree's 75,000 records in Python took 0.3 CPU-seconds, and 0.55 s of a
   first commit over ssh while nothing else could start (the streams wait for the listing's
   paths). This parses the records find prints for ordinary paths and makes the very objects
   the Python parser makes, through the callables it is given (GuestPath, the stat key's
   pack), so that both agree to the byte. Any record it does not know for plain (a socket, a
   negative time, a number of more than 18 digits, a name with an empty, "." or ".." part, a
   field too many) stops it there: the Python parser reads that record, then calls this again.

   parse(buffer, start, paths, spec) -> (stop, file_bytes)
     buffer: find's output; start: where a record starts in it;
     paths: the dict the records go into, by relative name;
     spec: (make, pack, types, kind_file, kind_symlink): GuestPath, the key's pack,
           {kind letter: (kind, type bits)}, and the kinds of a regular file and a symlink.
   stop is where the first record not parsed starts (a record not whole yet, or one left to
   the Python parser); file_bytes, the size of the regular files parsed. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define HEAD_FIELDS 11
#define MAX_DIGITS 18 /* fits a signed 64-bit integer whatever the digits */
#define MAX_SIZE (1LL << 52) /* a file's: the sum of a listing's fits too */

typedef struct {
    PyObject *kind;  /* borrowed: held by the types dict */
    long long type_bits;
    int known, file, symlink;
} KindSlot;

/* A decimal (base 10) or octal (base 8) number of 1 to MAX_DIGITS digits, the whole field. */
static int parse_number(const char *text, Py_ssize_t length, int base, long long *out)
{
    long long value = 0;
    if (length < 1 || length > MAX_DIGITS)
        return 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        int digit = text[i] - '0';
        if (digit < 0 || digit >= base)
            return 0;
        value = value * base + digit;
    }
    *out = value;
    return 1;
}

/* find's %T@: seconds, a point and ten digits; nanoseconds are the first nine of them
   (as parse_time drops what is past the nanosecond). */
static int parse_find_time(const char *text, Py_ssize_t length, long long *out)
{
    long long seconds, fraction;
    if (length < 12 || text[length - 11] != '.')
        return 0;
    if (!parse_number(text, length - 11, 10, &seconds) || seconds > 9000000000LL)
        return 0;
    if (!parse_number(text + length - 10, 9, 10, &fraction))
        return 0;
    if (text[length - 1] < '0' || text[length - 1] > '9')
        return 0;
    *out = seconds * 1000000000LL + fraction;
    return 1;
}

/* Whether a relative name has an empty, "." or ".." part (guest.py: _unsafe). */
static int unsafe_name(const char *name, Py_ssize_t length)
{
    Py_ssize_t part = 0;
    for (Py_ssize_t i = 0; i <= length; i++) {
        if (i == length || name[i] == '/') {
            Py_ssize_t size = i - part;
            if (size == 0 || (size == 1 && name[part] == '.') || (size == 2 && name[part] == '.' && name[part + 1] == '.'))
                return 1;
            part = i + 1;
        }
    }
    return 0;
}

static int load_kinds(PyObject *types, PyObject *kind_file, PyObject *kind_symlink, KindSlot slots[256])
{
    PyObject *letter, *value;
    Py_ssize_t position = 0;
    memset(slots, 0, sizeof(KindSlot) * 256);
    if (!PyDict_Check(types)) {
        PyErr_SetString(PyExc_TypeError, "types must be a dict");
        return 0;
    }
    while (PyDict_Next(types, &position, &letter, &value)) {
        if (!PyBytes_Check(letter) || PyBytes_GET_SIZE(letter) != 1 || !PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 2) {
            PyErr_SetString(PyExc_TypeError, "types must map one letter to (kind, type bits)");
            return 0;
        }
        KindSlot *slot = &slots[(unsigned char)PyBytes_AS_STRING(letter)[0]];
        slot->kind = PyTuple_GET_ITEM(value, 0);
        slot->type_bits = PyLong_AsLongLong(PyTuple_GET_ITEM(value, 1));
        if (slot->type_bits == -1 && PyErr_Occurred())
            return 0;
        if ((slot->file = PyObject_RichCompareBool(slot->kind, kind_file, Py_EQ)) < 0
            || (slot->symlink = PyObject_RichCompareBool(slot->kind, kind_symlink, Py_EQ)) < 0)
            return 0;
        slot->known = 1;
    }
    return 1;
}

/* One record's GuestPath into paths; 1 done, 0 left to the Python parser, -1 an error. */
static int parse_record(const char *head, Py_ssize_t head_length, const char *path, Py_ssize_t path_length,
                        const char *target, Py_ssize_t target_length, PyObject *paths, PyObject *make,
                        PyObject *pack, const KindSlot kinds[256], long long *file_bytes)
{
    const char *field[HEAD_FIELDS];
    Py_ssize_t length[HEAD_FIELDS];
    int count = 0;
    Py_ssize_t from = 0;
    for (Py_ssize_t i = 0; i <= head_length; i++) {
        if (i == head_length || head[i] == ' ') {
            if (count == HEAD_FIELDS)
                return 0;
            field[count] = head + from;
            length[count] = i - from;
            count++;
            from = i + 1;
        }
    }
    if (count != HEAD_FIELDS || length[0] != 1)
        return 0;
    const KindSlot *slot = &kinds[(unsigned char)field[0][0]];
    if (!slot->known)
        return 0;
    long long mode, uid, gid, size, mtime, ctime, inode, nlink, device, blocks;
    if (!parse_number(field[1], length[1], 8, &mode) || !parse_number(field[2], length[2], 10, &uid)
        || !parse_number(field[3], length[3], 10, &gid) || !parse_number(field[4], length[4], 10, &size)
        || !parse_find_time(field[5], length[5], &mtime) || !parse_find_time(field[6], length[6], &ctime)
        || !parse_number(field[7], length[7], 10, &inode) || !parse_number(field[8], length[8], 10, &nlink)
        || !parse_number(field[9], length[9], 10, &device) || !parse_number(field[10], length[10], 10, &blocks))
        return 0;
    if (size > MAX_SIZE)
        return 0;

    const char *rel = path;
    Py_ssize_t rel_length = path_length;
    if (path_length >= 2 && path[0] == '.' && path[1] == '/') {
        rel += 2;
        rel_length -= 2;
    } else if (path_length == 1 && path[0] == '.') {
        rel_length = 0;
    }
    if (rel_length > 0 && unsafe_name(rel, rel_length))
        return 0;

    int is_file = slot->file;
    int result = -1;
    PyObject *rel_object = NULL, *mode_object = NULL, *uid_object = NULL, *gid_object = NULL, *size_object = NULL;
    PyObject *stored_size = NULL, *mtime_object = NULL, *ctime_object = NULL, *inode_object = NULL;
    PyObject *nlink_object = NULL, *device_object = NULL, *bits_object = NULL, *identity = NULL;
    PyObject *target_object = NULL, *key = NULL, *guest_path = NULL;

    if (!(rel_object = PyBytes_FromStringAndSize(rel, rel_length)) || !(mode_object = PyLong_FromLongLong(mode))
        || !(uid_object = PyLong_FromLongLong(uid)) || !(gid_object = PyLong_FromLongLong(gid))
        || !(size_object = PyLong_FromLongLong(size)) || !(mtime_object = PyLong_FromLongLong(mtime))
        || !(ctime_object = PyLong_FromLongLong(ctime)) || !(inode_object = PyLong_FromLongLong(inode))
        || !(nlink_object = PyLong_FromLongLong(nlink)) || !(device_object = PyLong_FromLongLong(device))
        || !(bits_object = PyLong_FromLongLong(slot->type_bits | mode)))
        goto done;
    stored_size = is_file ? Py_NewRef(size_object) : PyLong_FromLong(0);
    if (!stored_size || !(identity = PyTuple_Pack(2, device_object, inode_object)))
        goto done;
    if (slot->symlink) {
        if (!(target_object = PyBytes_FromStringAndSize(target, target_length)))
            goto done;
    } else {
        target_object = Py_NewRef(Py_None);
    }
    PyObject *key_args[] = {inode_object, size_object, mtime_object, ctime_object, bits_object, uid_object, gid_object, nlink_object};
    if (!(key = PyObject_Vectorcall(pack, key_args, 8, NULL)))
        goto done;
    PyObject *path_args[] = {rel_object, slot->kind, mode_object, uid_object, gid_object, Py_None, Py_None,
                             stored_size, mtime_object, ctime_object, identity, nlink_object, target_object, key};
    if (!(guest_path = PyObject_Vectorcall(make, path_args, 14, NULL)))
        goto done;
    if (PyDict_SetItem(paths, rel_object, guest_path) < 0)
        goto done;
    if (is_file)
        *file_bytes += size;
    result = 1;
done:
    Py_XDECREF(rel_object);
    Py_XDECREF(mode_object);
    Py_XDECREF(uid_object);
    Py_XDECREF(gid_object);
    Py_XDECREF(size_object);
    Py_XDECREF(stored_size);
    Py_XDECREF(mtime_object);
    Py_XDECREF(ctime_object);
    Py_XDECREF(inode_object);
    Py_XDECREF(nlink_object);
    Py_XDECREF(device_object);
    Py_XDECREF(bits_object);
    Py_XDECREF(identity);
    Py_XDECREF(target_object);
    Py_XDECREF(key);
    Py_XDECREF(guest_path);
    return result;
}

static PyObject *parse(PyObject *module, PyObject *args)
{
    Py_buffer buffer;
    Py_ssize_t start;
    PyObject *paths, *make, *pack, *types, *kind_file, *kind_symlink;
    KindSlot kinds[256];
    long long file_bytes = 0;
    if (!PyArg_ParseTuple(args, "y*nO!(OOOOO)", &buffer, &start, &PyDict_Type, &paths, &make, &pack, &types, &kind_file,
                          &kind_symlink))
        return NULL;
    const char *data = buffer.buf;
    Py_ssize_t end = buffer.len;
    if (start < 0 || start > end) {
        PyBuffer_Release(&buffer);
        PyErr_SetString(PyExc_ValueError, "start outside the buffer");
        return NULL;
    }
    if (!load_kinds(types, kind_file, kind_symlink, kinds)) {
        PyBuffer_Release(&buffer);
        return NULL;
    }
    while (start < end) {
        const char *head = data + start;
        const char *head_end = memchr(head, '\0', end - start);
        if (!head_end)
            break;
        const char *path = head_end + 1;
        const char *path_end = memchr(path, '\0', data + end - path);
        if (!path_end)
            break;
        const char *target = path_end + 1;
        const char *target_end = memchr(target, '\0', data + end - target);
        if (!target_end)
            break;
        int done = parse_record(head, head_end - head, path, path_end - path, target, target_end - target, paths, make, pack,
                                kinds, &file_bytes);
        if (done < 0) {
            PyBuffer_Release(&buffer);
            return NULL;
        }
        if (done == 0)
            break;
        start = target_end + 1 - data;
    }
    PyBuffer_Release(&buffer);
    return Py_BuildValue("nL", start, file_bytes);
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS, "parse(buffer, start, paths, spec) -> (stop, file_bytes): see _listing.c"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_listing", "A guest's find listing parsed in C (see guest.py: ListingParser).", -1, methods,
};

PyMODINIT_FUNC PyInit__listing(void)
{
    return PyModule_Create(&module);
}
