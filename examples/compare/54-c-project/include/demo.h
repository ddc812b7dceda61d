int demo(void);
