from .featup_jbu import FeatUpJBU

__all__ = ['FeatUpJBU']
