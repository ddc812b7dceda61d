int demo(void){return 1;}
