// ispaced: placeholder entry point while the target layers are built (replaced by the real daemon).
int main() { return 2; }
