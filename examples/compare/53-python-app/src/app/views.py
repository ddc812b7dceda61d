def index():
    return 'hi'
